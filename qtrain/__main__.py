from qtrain.cli.app import main

main()

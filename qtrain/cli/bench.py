"""``qtrain bench ...``: speed measurements (codec encode/decode vs the copy bandwidth)."""

from __future__ import annotations

import json

import typer

from qtrain.cli.bench_network import network

app = typer.Typer(
    help="Measure speed: codecs against the copy bandwidth; training on an emulated network.",
    no_args_is_help=True,
)


@app.command("codec")
def codec(
    numel: int = typer.Option(2**24, "--numel", help="Elements of the random float32 input."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per measurement (the median is reported)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Encode and decode every codec on NUMEL random floats; report time, GB/s and the floor ratio."""
    from qtrain.bench.codec import bench_codecs
    from qtrain.cli.errors import fail

    if numel < 1 or repeats < 1:
        fail("--numel and --repeats must be positive")
    rows = bench_codecs(numel=numel, repeats=repeats, device=device)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    first = rows[0]
    typer.echo(
        f"numel={numel} device={first['device']} threads={first['threads']} "
        f"copy={first['copy_gbps']:.2f} GB/s ({first['copy_s'] * 1e3:.2f} ms), median of {repeats}"
    )
    typer.echo(
        f"{'codec':<12}{'bits':>5}{'wire MB':>9}{'ratio':>7}{'enc ms':>9}{'enc GB/s':>9}{'enc/floor':>10}"
        f"{'dec ms':>9}{'dec GB/s':>9}{'dec/floor':>10}"
    )
    for r in rows:
        typer.echo(
            f"{r['codec']:<12}{r['bits']:>5}{r['wire_bytes'] / 1e6:>9.2f}{r['compression_vs_fp32']:>7.1f}"
            f"{r['encode_s'] * 1e3:>9.2f}{r['encode_gbps']:>9.2f}{r['encode_floor_ratio']:>10.1f}"
            f"{r['decode_s'] * 1e3:>9.2f}{r['decode_gbps']:>9.2f}{r['decode_floor_ratio']:>10.1f}"
        )


app.command("network")(network)

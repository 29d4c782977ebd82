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
    threads: int = typer.Option(0, "--threads", help="torch and numba threads (0: leave their defaults)."),
    kernels: str = typer.Option("auto", "--kernels", help="auto | numba | torch (runtime.kernels)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (codec rows and the worker step)."),
) -> None:
    """Time every codec's paths (encode, encode with error feedback, decode, the server's
    aggregate of 4 uplinks) and efficient-adam's worker step against the copy-bandwidth floor."""
    from qtrain.bench.codec import bench_codecs, bench_worker_step
    from qtrain.bench.host import describe_host, host_line
    from qtrain.cli.errors import fail
    from qtrain.kernels import KERNEL_CHOICES

    if numel < 1 or repeats < 1 or threads < 0:
        fail("--numel and --repeats must be positive, --threads >= 0")
    if kernels not in KERNEL_CHOICES:
        fail(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, not {kernels!r}")
    try:
        common = {
            "numel": numel,
            "repeats": repeats,
            "device": device,
            "threads": threads,
            "kernels": kernels,
        }
        rows = bench_codecs(**common)
        step = bench_worker_step(**common)
    except ValueError as exc:
        fail(str(exc))
    first = rows[0]
    host = describe_host(first["copy_gbps"] if first["device"] == "cpu" else None)
    if as_json:
        typer.echo(json.dumps({"host": host, "codecs": rows, "worker_step": step}, indent=2))
        return
    typer.echo(host_line(host))
    typer.echo(
        f"numel={numel} device={first['device']} threads={first['threads']} kernels={kernels} "
        f"copy={first['copy_gbps']:.2f} GB/s ({first['copy_s'] * 1e3:.2f} ms), median of {repeats}; "
        "each path: ms and x its memory-traffic floor"
    )
    typer.echo(
        f"{'codec':<12}{'bits':>5}{'ratio':>7}{'path':>7}{'encode':>15}{'encode+EF':>15}{'decode':>15}"
        f"{'aggregate x' + str(first['aggregate_workers']):>17}"
    )

    def cell(r, key, width=15):
        return f"{r[key + '_s'] * 1e3:>{width - 7}.1f} {r[key + '_floor_ratio']:>5.1f}x"

    for r in rows:
        typer.echo(
            f"{r['codec']:<12}{r['bits']:>5}{r['compression_vs_fp32']:>7.1f}{r['path']:>7}"
            f"{cell(r, 'encode')}{cell(r, 'encode_ef')}{cell(r, 'decode')}{cell(r, 'aggregate', 17)}"
        )
    typer.echo(f"{step['path']}: {step['seconds'] * 1e3:.1f} ms, {step['floor_ratio']:.1f}x its floor")


app.command("network")(network)

"""``qtrain bench ...``: speed measurements (codec encode/decode vs the copy bandwidth)."""

from __future__ import annotations

import typer

from qtrain.cli.bench_network import network
from qtrain.io import strict_json

app = typer.Typer(
    help="Measure speed: codecs against the copy bandwidth; training on an emulated network.",
    no_args_is_help=True,
)


QUICK_NUMEL, QUICK_REPEATS = 2**20, 3


@app.command("codec")
def codec(
    numel: int = typer.Option(2**24, "--numel", help="Elements of the random float32 input."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per measurement (the median is reported)."),
    quick: bool = typer.Option(
        False, "--quick", help=f"2^20 elements and {QUICK_REPEATS} runs (about 20x shorter; less stable)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    threads: int = typer.Option(0, "--threads", help="torch and numba threads (0: leave their defaults)."),
    kernels: str = typer.Option("auto", "--kernels", help="auto | numba | triton | torch (runtime.kernels)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (codec rows and the worker step)."),
) -> None:
    """Time every codec's paths (the public API's encode and decode, the worker's encode with
    error feedback, the server's aggregate of 4 uplinks) and efficient-adam's worker step
    against the copy-bandwidth floor. It first says how long it will take (2^24 elements on 2
    cores: 40 s with the kernels, about 12 minutes with --kernels torch)."""
    import sys

    from qtrain.bench.codec import bench_codecs, bench_worker_step, estimate_seconds
    from qtrain.bench.host import describe_host, host_line
    from qtrain.cli.errors import fail
    from qtrain.kernels import KERNEL_CHOICES

    if quick:
        if (numel, repeats) != (2**24, 5):
            fail("--quick chooses --numel and --repeats itself: give --quick or those two")
        numel, repeats = QUICK_NUMEL, QUICK_REPEATS
    if numel < 1 or repeats < 1 or threads < 0:
        fail("--numel and --repeats must be positive, --threads >= 0")
    if kernels not in KERNEL_CHOICES:
        fail(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, not {kernels!r}")

    def say(text: str) -> None:
        print(f"qtrain: bench codec: {text}", file=sys.stderr, flush=True)

    try:
        common = dict(numel=numel, repeats=repeats, device=device, threads=threads, kernels=kernels)
        estimate = estimate_seconds(**common)
        small = f"{min(numel, 2**18)} elements"
        say(
            f"{numel} elements, {repeats} runs per path: about {_duration(estimate)} (estimated from {small})"
        )
        rows = bench_codecs(**common, progress=lambda label, s: say(f"{label} done in {s:.1f} s"))
        step = bench_worker_step(**common)
    except ValueError as exc:
        fail(str(exc))
    first = rows[0]
    host = describe_host(first["copy_gbps"] if first["device"] == "cpu" else None)
    if as_json:
        typer.echo(strict_json.dumps({"host": host, "codecs": rows, "worker_step": step}, indent=2))
        return
    typer.echo(host_line(host))
    typer.echo(
        f"numel={numel} device={first['device']} threads={first['threads']} kernels={kernels} "
        f"copy={first['copy_gbps']:.2f} GB/s ({first['copy_s'] * 1e3:.2f} ms), median of {repeats}"
    )
    typer.echo(
        "each cell: milliseconds, then x the path's memory-traffic floor (1.0x: as fast as copying its bytes)"
    )
    typer.echo(
        "encode, decode: the public API (qtrain.get_codec); encode+EF: the worker's uplink; "
        f"aggregate: the server's mean of {first['aggregate_workers']} uplinks; "
        "engine, api: what runs them there (numba, triton, or torch: the reference)"
    )
    typer.echo(
        f"{'codec':<19}{'bits':>5}{'ratio':>7}{'engine':>7}{'api':>6}{'encode':>16}{'encode+EF':>16}"
        f"{'decode':>16}{'aggregate':>16}"
    )

    def cell(r, key, width=16):
        return f"{r[key + '_s'] * 1e3:>{width - 7}.1f} {r[key + '_floor_ratio']:>5.1f}x"

    for r in rows:
        typer.echo(
            f"{r['codec']:<19}{r['bits']:>5}{r['compression_vs_fp32']:>7.1f}{r['path']:>7}{r['api_path']:>6}"
            f"{cell(r, 'encode')}{cell(r, 'encode_ef')}{cell(r, 'decode')}{cell(r, 'aggregate')}"
        )
    typer.echo(f"{step['path']}: {step['seconds'] * 1e3:.1f} ms, {step['floor_ratio']:.1f}x its floor")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


app.command("network")(network)

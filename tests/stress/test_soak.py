"""`make soak`'s verdict: the growth fit, the file-count and scrape checks fail when they
should, so a passing soak cannot come from a check that looks at nothing."""

from __future__ import annotations

from pathlib import Path

from stress.soak import Commands, Sample, doc_write, evaluate, linear_fit, svg_plot

WARMUP = 300.0
HEALTH = {"runs": {}, "due_fraction": {"agent-health": 1.0}, "errors": {}, "http_5xx": 0}


def samples(
    *, worker_mb_per_hour: float = 0.0, files_after: int = 30, scrape_cpu: float = 0.01
) -> list[Sample]:
    out = []
    for i in range(181):  # 30 minutes at 10 s
        t = i * 10.0
        out.append(
            Sample(
                t=t,
                rss={
                    "web-worker-1": 80.0,
                    "beat": 100.0,
                    "worker-main": 100.0 + worker_mb_per_hour * t / 3600,
                },
                files=30 if t < WARMUP + 600 else files_after,
                dir_bytes=2_000_000,
                scrape_web=0.05,
                scrape_worker=0.05,
                scrape_cpu=scrape_cpu,
                pg_connections=6,
                redis_clients=15,
                commands=i,
                load1=1.0,
            )
        )
    return out


def verdict(data: list[Sample]) -> list[str]:
    return evaluate(
        data, WARMUP, HEALTH, Commands(procs=None, enqueue_every=10, other_every=30), {}
    ).violations  # type: ignore[arg-type]


def test_linear_fit() -> None:
    slope, r2 = linear_fit([0, 1, 2, 3], [1, 3, 5, 7])
    assert (round(slope, 6), round(r2, 6)) == (2.0, 1.0)


def test_a_flat_system_passes() -> None:
    assert verdict(samples()) == []


def test_growth_over_the_bound_fails() -> None:
    assert verdict(samples(worker_mb_per_hour=1.5)) == []
    (violation,) = verdict(samples(worker_mb_per_hour=3.0))
    assert violation.startswith("worker-main grows 3.00 MB/h")


def test_a_growing_metric_directory_fails() -> None:
    (violation,) = verdict(samples(files_after=35))
    assert "metric directory grew from 30 to 35 files" in violation


def test_a_slow_aggregation_fails() -> None:
    (violation,) = verdict(samples(scrape_cpu=0.2))
    assert "aggregating the metric directory" in violation


def test_doc_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text("# Reliability\n\nintro\n")
    doc_write(doc, "<!-- soak:begin (written by make soak) -->\nfirst\n<!-- soak:end -->")
    doc_write(doc, "<!-- soak:begin (written by make soak) -->\nsecond\n<!-- soak:end -->")
    text = doc.read_text()
    assert "second" in text
    assert "first" not in text
    assert text.count("soak:begin") == 1
    svg_plot(samples(), WARMUP, tmp_path / "rss.svg")
    assert (tmp_path / "rss.svg").read_text().count("<polyline") == 3


def test_tracemalloc_report_names_what_each_traced_process_kept(tmp_path: Path) -> None:
    """One section per traced process folder, each naming the allocation that grew between its
    first and last snapshot."""
    import tracemalloc

    from stress.soak import tracemalloc_report

    kept: list[bytes] = []
    tracemalloc.start(4)
    try:
        for process in ("main", "child-101"):
            folder = tmp_path / process
            folder.mkdir()
            tracemalloc.take_snapshot().dump(str(folder / "snap-0000.tracemalloc"))
            kept.extend(bytes(1000) + bytes([i % 256]) for i in range(300))  # ~300 KB held
            tracemalloc.take_snapshot().dump(str(folder / "snap-0001.tracemalloc"))
    finally:
        tracemalloc.stop()
    (tmp_path / "child-102").mkdir()  # a child that died before its second snapshot

    report = tracemalloc_report(tmp_path)
    sections = report.split("\n\n")
    assert [s.splitlines()[0].split(",")[1].strip() for s in sections] == [
        "worker child-101",
        "worker child-102: fewer than two snapshots",
        "worker main",
    ]
    for section in (sections[0], sections[2]):
        growth = float(section.splitlines()[2].split()[0])  # the top line's KiB
        assert growth >= 250, section
        assert "test_soak.py" in section

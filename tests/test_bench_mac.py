"""The Mac benchmark's report on the shipped demo model (a smoke check: 64 px, one step, no timings checked)."""

from bench.mac import report


def test_report_measures_the_demo_model_and_skips_a_model_not_on_disk():
    lines = report(["demo", "nobody/no-such-model"], size=64, steps=1, quantize=None)
    assert lines[0].startswith("mflux-studio benchmark")
    demo = next(line for line in lines if line.startswith("demo "))
    assert demo.startswith("demo 64x64, 1 steps") and "one step only" in demo and "VAE decode" in demo, demo
    assert "nobody/no-such-model: skipped (its weights are not on disk; nothing is downloaded)" in lines
    assert not any("mflux demo" in line for line in lines)  # mflux cannot load the demo models

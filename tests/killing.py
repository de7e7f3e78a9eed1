"""Killing a `lens` step with -9 inside its training loop (lens_core.training.engine), for the resume tests."""


# a child process that runs `lens <step>` and holds, inside the training loop, at (epoch, batch): killed there
HELD = ("import sys, time\nimport lens_core.training.engine as engine\nfrom lens_core.cli import main\n"
        "real = engine.run\n"
        "def held(*a, **k):\n"
        "    def on_step(epoch, batch):\n"
        "        if (epoch, batch) == ({epoch}, {batch}):\n"
        "            print('holding', flush=True)\n            time.sleep(120)\n"
        "    return real(*a, **{{**k, 'on_step': on_step}})\n"
        "engine.run = held\nmain(sys.argv[1:])\n")


def run_killed(args, epoch: int, batch: int) -> None:
    """``lens *args`` in a child process, killed with -9 at batch ``batch`` of epoch ``epoch``."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen([sys.executable, "-c", HELD.format(epoch=epoch, batch=batch), *map(str, args)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert child.stdout.readline().strip() == "holding"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

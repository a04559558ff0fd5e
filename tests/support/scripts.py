"""User code the scheduler's tests run as jobs."""

from __future__ import annotations


def checkpointing_loop(steps: int = 0) -> str:
    """A "training loop" of 0.1 s steps (``steps`` of them; 0: until stopped) that checkpoints its
    step and exits as preempted when asked to yield, and resumes from the checkpoint."""
    condition = f"step < {steps}" if steps else "True"
    return f'''
import os, time
import pylon.train as t
ck = os.path.join(t.checkpoint_dir(), "step")
step = int(open(ck).read()) if os.path.exists(ck) else 0
print(f"starting at step {{step}}", flush=True)
while {condition}:
    if t.should_preempt():
        open(ck, "w").write(str(step))
        print(f"checkpointed at step {{step}}", flush=True)
        t.exit_preempted()
    time.sleep(0.1)
    step += 1
    t.report(step, loss=1.0 / step)
print("finished at step", step, flush=True)
'''

"""The scheduler leader's orchestration: the turn loop, event dispatch, passes, applying decisions
and moving attempts forward, all over the ports in ``domain/ports.py``."""

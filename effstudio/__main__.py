import multiprocessing

from effstudio.cli import main

if __name__ == "__main__":
    # a frozen (PyInstaller) build starts its child processes (graph layout pool, latency measurement)
    # through this executable: let them run their task instead of the app
    multiprocessing.freeze_support()
    raise SystemExit(main())

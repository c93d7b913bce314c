from jobreactor.cli import main

# Guarded: a process pool started with "spawn" (defer="process") imports this module again as
# __mp_main__ in each of its workers, which must not run a second node.
if __name__ == "__main__":
    raise SystemExit(main())

from jobreactor.cli import main

raise SystemExit(main())

from effstudio.cli import main

raise SystemExit(main())

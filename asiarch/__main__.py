from asiarch.cli import main

raise SystemExit(main())

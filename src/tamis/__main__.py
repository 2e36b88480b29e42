from tamis.cli import main

raise SystemExit(main())

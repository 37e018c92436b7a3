from mgfast.cli import main

raise SystemExit(main())

from mlasm.cli import main

raise SystemExit(main())

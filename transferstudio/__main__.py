from transferstudio.cli import main

raise SystemExit(main())

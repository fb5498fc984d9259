from clap_vla.cli import main

raise SystemExit(main())

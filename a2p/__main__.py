import sys

from a2p.cli.main import main

sys.exit(main())

import sys

from kevo_repl.cli.main import main

sys.exit(main())

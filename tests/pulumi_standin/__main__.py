import sys

from pulumi_standin.cli import main

sys.exit(main(sys.argv[1:]))

import sys

if sys.argv[1:2] == ["tamper"]:  # a test's hand in the simulated cloud, not a CLI command (tamper.py)
    from .tamper import main as tamper_main

    sys.exit(tamper_main(sys.argv[2:]))

from .cli import main

sys.exit(main(sys.argv[1:]))

"""``python3 -m flightrec.probes.widen run|resolve ...``: see flightrec.probes.widen.guest.main."""

import sys

from flightrec.probes.widen.guest import main

sys.exit(main())

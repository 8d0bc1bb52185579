"""``nexus-actors loadtest``: rooms of simulated players against a running server.

Every simulated player is a real :class:`nexus_actors.client.Session`: the load
test measures what an application would see (cursor and acknowledgement
latency, delivery, reconnections) and checks that no durable event is lost or
applied twice while connections are cut under the sessions. See
``docs/loadtest.md``.

- :mod:`.plan`: the arguments, checked (:class:`Plan`).
- :mod:`.tally`: counting from the sessions' events (pure).
- :mod:`.report`: percentiles, the checks, the JSON report and the table (pure).
- :mod:`.churn`: choosing and cutting connections.
- :mod:`.runner`: the trio side (``main``).

Only the arguments and the tally are imported here: the report and the runner use
``rich``, which the server's own commands do not need to load.
"""

from .plan import Plan as Plan, PlanError as PlanError, add_arguments as add_arguments
from .tally import PlayerTally as PlayerTally, Tally as Tally

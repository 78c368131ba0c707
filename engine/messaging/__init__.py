"""The messaging runtime of issue #6: provider webhooks in (:mod:`.inbound`), agent replies
and campaign sends out through a durable queue (:mod:`.outbound`, :mod:`.campaigns`), the
``undelivered`` strategy, and the wiring that starts it all per worker (:mod:`.wiring`)."""

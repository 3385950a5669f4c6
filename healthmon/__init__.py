"""Health monitors: probes per endpoint, rise/fall anti-flap, results to the state store."""

"""edgepart.agent: on each device, find the peers of its plan and execute its program."""

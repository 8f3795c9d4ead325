"""What the device's agent and the app's client both use: links to peers (ZeroMQ), discovery (mDNS),
the picking among a plan's alternative devices, and the in-process registry through which an agent
and a client in one process reach each other without importing each other."""

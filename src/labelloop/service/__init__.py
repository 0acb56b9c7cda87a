"""The operations of labelloop, called alike by the HTTP API, the CLI and the workers.

Each function opens its own transactions and enqueues the jobs it created only after they commit.
"""

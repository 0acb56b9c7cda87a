"""Label Studio ML-backend compatibility: a Label Studio project is served by one labelloop task.

``config`` reads labelling configs, ``links`` keeps what media fetching needs (Label Studio's URL
and token), ``backend`` answers the protocol (``/setup``, ``/predict``, ``/webhook``). This module
imports nothing heavy: :mod:`labelloop.fetch` uses ``links``.
"""

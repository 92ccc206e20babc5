"""Tools around the inspection runtime: the one-machine demo, the camera simulator, the verdict
gallery, the fault-injection harness and the operator dashboard.

Layered above :mod:`pipelines` (the runtime never imports ``tooling``); the ``judo`` command finds
these sub-commands through the ``judo.commands`` entry-point group (:func:`tooling.cli.register`).
"""

"""Development tools, never imported by a production process: the Pleo API simulator
(``simulator``, ``pleo-export simulate``), the one-command demo (``demo``) and process-group
helpers for both (``processes``). ``tests/unit/test_layout.py`` keeps them apart.
"""

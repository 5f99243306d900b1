"""A standalone ``db`` and its tests on ``async_sa.testing`` (README "Testing")."""

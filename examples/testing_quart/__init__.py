"""A Quart app factory and its tests on ``async_sa.testing`` (README "Testing")."""

"""Runnable examples: ``standalone.py`` (plain asyncio) and ``notes_app`` (Quart)."""

"""Runnable examples: ``standalone.py`` (plain asyncio), ``notes_app`` (Quart) and
``fastapi_notes.py`` (FastAPI), the last two shown by ``demo.show``."""

"""The live adapter for a Trader WebSocket server: login, session and connection."""

"""The API's services: sandbox lifecycle, API keys, encrypted secrets."""

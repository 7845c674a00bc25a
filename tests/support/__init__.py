"""Helpers shared by the integration, fault and CLI tests: real `dynd` processes on 127.0.0.1."""

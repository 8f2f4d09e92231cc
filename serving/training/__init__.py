"""Training team adapters: FIM examples from a tenant's accepted suggestions
(and, optionally, a repository checkout), a LoRA fine-tune with peft and
transformers on Ray Train (GPU workers in production, CPU here), evaluation of
base vs adapter on held-out accepted suggestions, and a run record.

It imports config, adapters, fim_templates and the keys file helpers; only the
command line imports it (torch, peft and transformers load only here, never in
the gateway).
"""

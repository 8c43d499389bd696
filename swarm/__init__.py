"""essaim.swarm: everything one peer needs to train one job, shared by the trainer and the coordinator.

Compute side (what one peer computes):

- ``errors``     the swarm's error tree (SwarmError and its subclasses)
- ``hardware``   device (CUDA, MPS, CPU) and dtype (bfloat16 where supported) for this machine
- ``model``      the recipe's causal LM and adapter (PEFT LoRA or full fine-tune): LoadedModel, load_model
- ``data``       datasets read, tokenized, packed and sharded; per-epoch shuffled batches; eval sets
- ``cache``      content-addressed, sha256-checked cache of a job's files
- ``evaluate``   exact_match, loss and perplexity on the held-out set
- ``state``      save and load the trained parameters (safetensors)
- ``artifact``   the finished job's adapter or model, model card and provenance.json
- ``demo_task``  the built-in job of ``essaim demo`` (a tiny Llama learns to add)

Swarm side (how peers train together): the DHT with its token authorizer, signed progress
records, the hivemind optimizer and the training loop live in their own modules of this package,
with ``reachability`` (can other peers dial this one? asked of the job's coordinator peer, which
dials back) and ``rounds`` (who a peer averaged with in each round, or why nobody).

This package imports only essaim.protocol from essaim; heavy libraries (torch, transformers, peft,
datasets, hivemind) are imported by the modules that need them, never by this file.
"""

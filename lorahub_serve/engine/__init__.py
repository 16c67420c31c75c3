"""The batched LoraHub engine: hub factors, multi-candidate LoRA forward, objective, search, export."""

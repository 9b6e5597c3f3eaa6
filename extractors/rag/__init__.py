"""The retrieval-augmented (RAG) expert (paper App. B): knowledge base, faiss index, report
bridging, MedCPT retrieval and the Qwen2 soft prompt. Entry point: ``python -m extractors.rag``;
see docs/rag.md."""

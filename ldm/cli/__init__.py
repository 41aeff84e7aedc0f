"""The command-line programs, one module each, and what they share (``common``):

    python -m ldm.cli.generate   text to image (ldm/pipeline.py)
    python -m ldm.cli.p2p        Prompt-to-Prompt, on a prompt or a real image (editing/prompt_to_prompt.py)
    python -m ldm.cli.pnp        Plug-and-Play and SDEdit on a real image (editing/plug_and_play.py)

This is the one package above the library: it imports ldm, editing and weights, and nothing of the
library imports it. A program checks its arguments before it loads a network, ends a bad one with a
one-line message and exit status 2, and imports no other program.
"""

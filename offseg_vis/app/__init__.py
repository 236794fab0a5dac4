"""The Gradio app: upload an image, see its segmentation, what the offsets changed, and its embedding.

Layout: ``inputs`` (decode uploads), ``models`` (checkpoints and their cards), ``render`` (pictures as
arrays), ``callbacks`` (what each button does, plain functions), ``ui`` (the gr.Blocks page), ``server``
(temp folder and launch), ``commands`` (``offseg app`` / ``offseg demo``). Importing this package does not
import gradio; ``offseg_vis.app.ui`` does.
"""

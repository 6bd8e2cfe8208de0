"""The report: its blocks, figures and rendering to Markdown and HTML."""

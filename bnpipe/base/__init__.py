"""The base: settings (the one reader of the environment), process lifecycle, Markdown tables."""

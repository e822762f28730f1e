"""Operations: the CLI, the DAG Params, warm trainers, the local stack, the inbox and the table suite."""

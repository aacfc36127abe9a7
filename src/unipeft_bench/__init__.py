"""The benchmark around unipeft: the paper's tasks, their offline stand-ins, and the offline seq2seq backbone."""

"""Config files, one `get_config(arg)` each (`python train.py --config=configs/<file>.py[:arg]`).

`stage1_default.py` and `stage2_maskgit.py` hold every field with its default; the stage-1
variants import the default and set only `ssl.method`; `arguments.py` parses the `:arg` part.
"""

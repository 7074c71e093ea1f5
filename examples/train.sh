#!/bin/bash
# A batch script (`gosok submit examples/train.sh`): gosok reads the #SBATCH and #GOSOK lines
# of the leading comment block and runs the script on every replica of the gang.
#SBATCH --job-name=train
#SBATCH --nodes=2
#SBATCH --gpus-per-node=h100:8
#SBATCH --time=10:00
#SBATCH --output=train-%j.out
#GOSOK --env EPOCHS=2
echo "rank $RANK of $WORLD_SIZE: devices $CUDA_VISIBLE_DEVICES"
for e in $(seq "$EPOCHS"); do
  echo "epoch $e"
  sleep 1
done

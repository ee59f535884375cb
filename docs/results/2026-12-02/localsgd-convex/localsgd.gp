if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {
  set terminal pngcairo size 1000,620 noenhanced font 'Sans,11'
} else {
  set terminal png size 1000,620 noenhanced
}
set output 'suboptimality_vs_rounds.png'
reset
set grid
set logscale xy
set format y '%.0e'
set key outside right top
set title 'Local SGD: f(x) - f* vs communication rounds (w8a, K=4, b=1, decay:32,500, T=32768)'
set xlabel 'communication rounds'
set ylabel 'f(x) - f*'
plot 'localsgd_k.dat' index 0 using 1:3 with lines linewidth 2 linetype 1 dashtype 1 title 'H=1', 'localsgd_k.dat' index 1 using 1:3 with lines linewidth 2 linetype 2 dashtype 1 title 'H=2', 'localsgd_k.dat' index 2 using 1:3 with lines linewidth 2 linetype 3 dashtype 1 title 'H=4', 'localsgd_k.dat' index 3 using 1:3 with lines linewidth 2 linetype 4 dashtype 1 title 'H=8', 'localsgd_k.dat' index 4 using 1:3 with lines linewidth 2 linetype 5 dashtype 1 title 'H=16', 'localsgd_k.dat' index 5 using 1:3 with lines linewidth 2 linetype 6 dashtype 1 title 'H=32', 'localsgd_k.dat' index 6 using 1:3 with lines linewidth 2 linetype 7 dashtype 1 title 'H=64', 'localsgd_k.dat' index 7 using 1:3 with lines linewidth 2 linetype 8 dashtype 1 title 'H=128', 'localsgd_k.dat' index 8 using 1:3 with lines linewidth 2 linetype 1 dashtype 2 title 'H=256', 'localsgd_k.dat' index 9 using 1:3 with lines linewidth 2 linetype 2 dashtype 2 title 'H=512', 'localsgd_k.dat' index 10 using 1:3 with lines linewidth 2 linetype 3 dashtype 2 title 'H=1024', 'localsgd_k.dat' index 11 using 1:3 with lines linewidth 2 linetype 4 dashtype 2 title 'H=2048', 0.0218099772 with lines dashtype 2 lc 'black' title 'eps'
unset output
if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {
  set terminal pngcairo size 1000,620 noenhanced font 'Sans,11'
} else {
  set terminal png size 1000,620 noenhanced
}
set output 'suboptimality_vs_grad_evals.png'
reset
set grid
set logscale xy
set format y '%.0e'
set key outside right top
set title 'Local SGD: f(x) - f* vs gradient evaluations (K t b) (w8a, K=4, b=1, decay:32,500, T=32768)'
set xlabel 'gradient evaluations (K t b)'
set ylabel 'f(x) - f*'
plot 'localsgd_k.dat' index 0 using 2:3 with lines linewidth 2 linetype 1 dashtype 1 title 'H=1', 'localsgd_k.dat' index 1 using 2:3 with lines linewidth 2 linetype 2 dashtype 1 title 'H=2', 'localsgd_k.dat' index 2 using 2:3 with lines linewidth 2 linetype 3 dashtype 1 title 'H=4', 'localsgd_k.dat' index 3 using 2:3 with lines linewidth 2 linetype 4 dashtype 1 title 'H=8', 'localsgd_k.dat' index 4 using 2:3 with lines linewidth 2 linetype 5 dashtype 1 title 'H=16', 'localsgd_k.dat' index 5 using 2:3 with lines linewidth 2 linetype 6 dashtype 1 title 'H=32', 'localsgd_k.dat' index 6 using 2:3 with lines linewidth 2 linetype 7 dashtype 1 title 'H=64', 'localsgd_k.dat' index 7 using 2:3 with lines linewidth 2 linetype 8 dashtype 1 title 'H=128', 'localsgd_k.dat' index 8 using 2:3 with lines linewidth 2 linetype 1 dashtype 2 title 'H=256', 'localsgd_k.dat' index 9 using 2:3 with lines linewidth 2 linetype 2 dashtype 2 title 'H=512', 'localsgd_k.dat' index 10 using 2:3 with lines linewidth 2 linetype 3 dashtype 2 title 'H=1024', 'localsgd_k.dat' index 11 using 2:3 with lines linewidth 2 linetype 4 dashtype 2 title 'H=2048', 0.0218099772 with lines dashtype 2 lc 'black' title 'eps'
unset output

; A hand-written ALFWorld problem (not from ALFRED): an apple on a countertop, a sink basin and a closed fridge.
; Goal: put a clean apple in the fridge. Object names follow ALFRED's mangling (Name_bar_x_bar_y_bar_z).
(define (problem tiny_clean_apple)
(:domain alfred)
(:objects
agent1 - agent
Apple - object
AppleType - otype
CounterTopType - rtype
SinkBasinType - rtype
FridgeType - rtype
Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20 - object
CounterTop_bar__plus_00_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_00 - receptacle
Sink_bar__plus_01_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_00_bar_SinkBasin - receptacle
Fridge_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_00_dot_00 - receptacle
loc_bar_0_bar_0_bar_0_bar_0 - location
loc_bar_1_bar_0_bar_0_bar_0 - location
loc_bar_2_bar_0_bar_0_bar_0 - location
loc_bar_3_bar_0_bar_0_bar_0 - location
)
(:init
(receptacleType CounterTop_bar__plus_00_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_00 CounterTopType)
(receptacleType Sink_bar__plus_01_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_00_bar_SinkBasin SinkBasinType)
(receptacleType Fridge_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_00_dot_00 FridgeType)
(objectType Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20 AppleType)
(canContain CounterTopType AppleType)
(canContain SinkBasinType AppleType)
(canContain FridgeType AppleType)
(pickupable Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20)
(cleanable Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20)
(heatable Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20)
(coolable Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20)
(openable Fridge_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_00_dot_00)
(atLocation agent1 loc_bar_0_bar_0_bar_0_bar_0)
(receptacleAtLocation CounterTop_bar__plus_00_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_00 loc_bar_1_bar_0_bar_0_bar_0)
(receptacleAtLocation Sink_bar__plus_01_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_00_bar_SinkBasin loc_bar_2_bar_0_bar_0_bar_0)
(receptacleAtLocation Fridge_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_00_dot_00 loc_bar_3_bar_0_bar_0_bar_0)
(inReceptacle Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20 CounterTop_bar__plus_00_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_00)
(objectAtLocation Apple_bar__plus_00_dot_10_bar__plus_00_dot_90_bar__plus_00_dot_20 loc_bar_1_bar_0_bar_0_bar_0)
)
(:goal
(and
(exists (?r - receptacle)
(exists (?o - object)
(and
(objectType ?o AppleType)
(receptacleType ?r FridgeType)
(inReceptacle ?o ?r)
(isClean ?o)
)))))
)
